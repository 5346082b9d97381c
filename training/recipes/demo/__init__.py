"""The demo recipe: a small SpeechGPT trained end to end on espeak-ng speech (see ``__main__``)."""
