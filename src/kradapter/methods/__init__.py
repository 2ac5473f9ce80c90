"""One folder per adapter method: config.py (what the user sets), layer.py (the math on one module), model.py
(which module types get which layer)."""
