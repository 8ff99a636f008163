"""Pass infrastructure: contract, registry, pipeline text, pass manager, instruments."""
