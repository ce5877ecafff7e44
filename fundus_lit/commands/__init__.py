"""The ``fundus-lit`` verbs, one module each: ``build_parser()`` and ``run(args)``."""
