"""The target profiles, one TOML file per device (data only; read by edgekit.target).

`targets/` at the top of the repository is a link to this directory.
"""
