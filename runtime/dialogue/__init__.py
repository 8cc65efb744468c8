"""Dialogue: the operator's YAML (spec) and the manager that applies it to each understood turn."""

from runtime.dialogue.manager import DialogueManager, Services
from runtime.dialogue.spec import DialogueError, DialogueSpec, load_dialogue

__all__ = ["DialogueError", "DialogueManager", "DialogueSpec", "Services", "load_dialogue"]
