"""Training of SpeechGPT adapters: data builders and the three stages (ma, cm, com)."""
