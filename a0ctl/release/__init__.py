"""The release gate (``a0ctl release check``) and tagging a release from its evidence
(``a0ctl release tag``). ``gate`` holds the checks, which ``a0ctl roadmap`` runs too."""
