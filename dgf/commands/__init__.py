"""The command-line layer, one module per group of commands: argument parsing and
nothing else. Each command has a ``*_parser()`` that builds its parser and a
``*_main(argv)`` that parses, then calls one function of the module that does the
work; :mod:`dgf.cli` names them for ``[project.scripts]``.

No option's choices or default is written here: each parser takes them from the
module that owns them. None of those imports TensorFlow, so every ``--help`` stays
fast; the modules that run a model are imported only once the arguments are parsed.
This layer alone defers its imports for that reason.
"""
