"""LangChain chat model and voice tools for SpeechGPT."""
