"""Pydantic models of the OpenAI (and vLLM) protocol the API speaks."""
