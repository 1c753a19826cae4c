"""Load settings from native TOML or Perdition files: the config package's API.

(Placeholder: the config helper replaces this with the real readers.)
"""
