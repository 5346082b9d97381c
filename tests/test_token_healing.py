"""Token healing of the chat template's final space (SpeechGPTModel.encode_prompt)."""

from __future__ import annotations

from speechgpt_agent.model import SpeechGPTModel
from speechgpt_agent.prompt import build_prompt


def test_trailing_space_is_left_to_the_answers_first_word(tiny_model_set, one_thread):
    model = SpeechGPTModel.from_pretrained(tiny_model_set.model, None, quantization=None, progress=False)
    prompt = build_prompt("hello")
    assert prompt.endswith("[SpeechGPT]: ")
    full, healed = model.encode(prompt), model.encode_prompt(prompt)
    assert model.tokenizer.convert_ids_to_tokens(full[-1]) == "\u2581"
    assert healed == full[:-1]
    # the healed prompt is a prefix of the prompt + answer as training tokenizes it
    answer = model.encode(prompt + "hello there<eoa>")
    assert answer[:len(healed)] == healed
    # a prompt without the trailing space is left alone
    assert model.encode_prompt(prompt.rstrip()) == model.encode(prompt.rstrip())
