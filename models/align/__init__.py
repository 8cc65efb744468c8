"""Image ↔ text alignment (CLIP-style) for the product catalogue.

A small projection head maps the fine-tuned product backbone's pooled features (1280-d, frozen) into the
kiosk's MiniLM sentence space (384-d), trained contrastively against the catalogue's names and descriptions.
``features`` caches backbone features, ``texts`` builds the text views, ``head`` is the projection and its
training, ``evaluate`` the retrieval metrics, ``cli`` the ``train align`` / ``eval align`` entry points.
"""
