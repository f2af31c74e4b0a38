"""The fit engine: what a model needs at a precision, and whether a card has it."""
