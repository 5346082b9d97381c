"""The subcommands of ``speechgpt-agent``, one module per kind of job.

* :mod:`.options`: what the subcommands share: argument types (``positive_int``,
  ``non_negative``, ``probability``, ``engine_arg``), the model-set and generation flags
  (``add_llm_args``, ``add_model_set_args``), turning them into library calls
  (``generation_options``, ``llm_quantization``, ``load_runtime``) and the checks of input and
  output paths made before any model loads.
* :mod:`.codec`: ``units``, ``vocode``, ``convert`` and ``parse_unit_text``.
* :mod:`.conversation`: ``chat``, ``transcribe``, ``speak``.
* :mod:`.maintenance`: ``info``, ``selfcheck``, ``demo``.

Each module has ``add_<command>(sub)`` functions that register a subcommand on the
``add_subparsers()`` action; :mod:`speechgpt_agent.cli` builds the parser from them (and from
``training.cli`` and ``server.cli``). Heavy imports (torch, transformers) happen inside the
command functions, so building the parser stays instant.
"""
