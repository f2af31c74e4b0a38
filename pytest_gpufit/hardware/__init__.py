"""Facts about the machine: GPU records, the environment, the catalog of known cards."""
