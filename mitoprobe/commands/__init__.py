"""The ``mitoprobe`` subcommands, one module per area; each command is thin over a library call.

``mitoprobe.cli`` loads these modules lazily (only the command that runs), so ``mitoprobe --help``
never imports torch, pyarrow or streamlit.
"""
