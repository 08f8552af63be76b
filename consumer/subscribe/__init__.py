"""For the teams that subscribe to enrich's topics: a typed reader, ``enrich tail``, a reference materializer.

Needs only the base install (``pip install enrich``: confluent-kafka, pydantic, orjson, jsonschema, typer,
rich); imports :mod:`schemas` and nothing else of ``consumer``. See docs/subscribing.md.
"""
