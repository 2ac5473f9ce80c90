"""Fine-tuning recipes (`kradapter train`, `compare`, `report`): the paper's three settings on the user's files or
on offline defaults, built on transformers' Trainer. Kept apart from the library core: nothing in kradapter's
methods imports from here."""
