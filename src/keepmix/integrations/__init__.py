"""Adapters that plug keepmix into other libraries' training loops.

* :mod:`keepmix.integrations.timm` — a drop-in for ``timm.data.Mixup`` (timm's ``train.py``).
"""
