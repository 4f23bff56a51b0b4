"""Where models come from: the registry, the local model store and Hub downloads."""
