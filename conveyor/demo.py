"""`conveyor chat`: talk to the engine in a terminal, tokens streamed as they come.

It drives `LLMEngine` directly (no server), which makes it the quickest way to
see that a model loads and generates sensibly.
"""

from __future__ import annotations

import itertools
import sys

from conveyor.settings import Settings
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


def run_chat(settings: Settings, max_tokens: int = 256) -> int:
    engine = LLMEngine(settings.engine_config())
    print(f"conveyor chat: {engine.model_name}. Empty line or Ctrl-D to quit.", flush=True)
    history: list[dict[str, str]] = []
    params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=max_tokens)
    for turn in itertools.count():
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            return 0
        history.append({"role": "user", "content": line})
        prompt = engine.tokenizer.apply_chat_template(history)
        request_id = f"chat-{turn}"
        engine.add_request(request_id, prompt, params)
        reply = []
        try:
            while engine.has_unfinished():
                for out in engine.step():
                    for choice in out.outputs:
                        sys.stdout.write(choice.text)
                        sys.stdout.flush()
                        reply.append(choice.text)
        except KeyboardInterrupt:
            engine.abort(request_id)
        print()
        history.append({"role": "assistant", "content": "".join(reply)})
    return 0
