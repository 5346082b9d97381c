"""Integrations of SpeechGPT with agent frameworks (LangChain first)."""
