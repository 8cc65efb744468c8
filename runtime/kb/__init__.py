"""The store's knowledge base: products, FAQ answers and store facts, validated with file and line,
searched by hybrid (BM25 + encoder) retrieval, and hot-reloaded when an operator edits the files.

    kb = KnowledgeBase.load(kb_dir)                # raises KBError listing every problem (file, line, message)
    kb.product("oatly-oat-milk"); kb.find_products("oat milk"); kb.by_ean("2142000000456"); kb.faq("returns")
    kb.store.is_open(); kb.store.hours_text()
    retriever = HybridRetriever(kb, embed)         # embed: list[str] -> (n, d) L2-normalised array
    retriever.search("can I bring this back", k=3) # -> [Hit(entry_id="faq:returns", ...), ...]
    watcher = KBWatcher(kb_dir, on_change=...)     # polls the files; swaps in a new KB only if it is valid
"""

from runtime.kb.loader import KnowledgeBase, ean13_check_digit, fingerprint, valid_ean13
from runtime.kb.model import FaqEntry, HoursException, KBError, KBIssue, Product, Service, StoreInfo
from runtime.kb.retrieval import Hit, HybridRetriever
from runtime.kb.watch import KBWatcher

__all__ = [
    "FaqEntry",
    "Hit",
    "HoursException",
    "HybridRetriever",
    "KBError",
    "KBIssue",
    "KBWatcher",
    "KnowledgeBase",
    "Product",
    "Service",
    "StoreInfo",
    "ean13_check_digit",
    "fingerprint",
    "valid_ean13",
]
