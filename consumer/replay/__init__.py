"""``enrich replay``: re-enrich the input topic (or a time range of it) with a new bundle, next to the live
consumer, on the streaming core (docs/operations.md, "Rolling out a new bundle").

* :mod:`.plan`: where to start and stop per partition, and which inputs to replay (the newest of each
  product), from one scan of the input topic; persisted for a restart;
* :mod:`.watch`: products updated live while the replay runs (never overwritten by the replay);
* :mod:`.throttle`: the ``--max-rate`` token bucket;
* :mod:`.progress`: a bar per partition on a terminal, log lines otherwise;
* :mod:`.runner`: the composition (enricher, pipeline, processor with the replay's hooks) and the summary;
* :mod:`.compare`: ``--dry-run --compare-to``: what would change, nothing produced.
"""
