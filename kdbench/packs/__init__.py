"""Domain packs: schema, loading with precise errors, decontamination, scaffolding."""

from kdbench.packs.loader import DomainPack, find_pack, list_packs, load_pack

__all__ = ["DomainPack", "find_pack", "list_packs", "load_pack"]
