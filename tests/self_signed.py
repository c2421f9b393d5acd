"""A throwaway certificate for 127.0.0.1, made by the system's openssl, for HTTPS tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) files in `folder`, valid a day for 127.0.0.1 and localhost."""
    openssl = shutil.which("openssl")
    assert openssl, "HTTPS tests need the openssl command (Debian: apt-get install openssl)"
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run([openssl, *request, *names, *files], check=True, capture_output=True)
    return cert, key
