"""The tool executor service: built-in tools (calculator, current_time, run_python), the
plug-in loader for user tools (entry point group ``a0.tools``) and the process sandbox
that runs model-written Python code under resource limits with no network."""
