"""A method kradapter does not ship, added from outside the package: PEFT's LoHa (Hadamard product of two low-rank
products, Delta W = (alpha / r) (B1 A1) ⊙ (B2 A2)).

Load it into any command with ``--plugin``, and every tool sees a method named "loha":

    kradapter --plugin examples/loha_spec.py budget 1024 768 --methods lora,loha
    kradapter --plugin examples/loha_spec.py approx --out runs/approx-loha --methods lora,loha
    kradapter --plugin examples/loha_spec.py compare --task text --methods kradapter,loha

(or put the file's path in the KRADAPTER_PLUGINS environment variable, or ``register_spec(LoHaSpec())`` in your
own script before calling the library).
"""

from kradapter.specs import MethodSpec, positive_int, register_spec


class LoHaSpec(MethodSpec):
    name = "loha"
    summary = "PEFT LoHa: (alpha / r) (B1 A1) ⊙ (B2 A2), 2 r (d_out + d_in) parameters (example plugin)"
    hparams = {"r": 8}  # what the count depends on, with LoHa's default
    knob = "r"  # the budget search varies r; the count grows with it, so the default bisection applies
    conv1d = False  # PEFT's LoHa adapts nn.Linear and nn.Conv2d, not transformers' Conv1D
    flattened = True  # conv targets: with use_effective_conv2d=False (the default) a kernel counts as out x in*kh*kw

    def count(self, d_out, d_in, r=8):
        return 2 * positive_int(r, "r") * (d_out + d_in)

    def config_class(self):
        from peft import LoHaConfig

        return LoHaConfig

    def unit_scale(self, config):
        return {"alpha": config.r}  # LoHa scales by alpha / r

    # delta(): the default, the layer's get_delta_weight as a d_out x d_in matrix, is what LoHa applies.


register_spec(LoHaSpec())
