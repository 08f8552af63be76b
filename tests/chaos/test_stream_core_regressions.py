"""Stream-core bugs the chaos scenarios found, each reduced to a minimal reproduction (real broker, real image
server, `enrich run` as a subprocess)."""

from __future__ import annotations

import uuid

import orjson
import pytest

from consumer.devtools.embedded_broker import create_topics
from consumer.devtools.image_server import ImageServer
from consumer.devtools.produce import events_from_catalog
from models.catalog.kaggle import read_catalog
from tests.chaos.common import send
from tests.service_harness import committed, enrich_env, start_enrich, tail, wait_exit

pytestmark = pytest.mark.broker


def test_idle_exit_does_not_fire_while_backpressure_holds_the_backlog(broker, tiny_bundle, sample_catalog,
                                                                       tmp_path) -> None:
    """Found by the full crash loop: the final `--idle-exit-s` run stopped (exit 0) with a third of the
    stream unread, because the time its partitions spent paused with work in flight counted as idle: once
    that work finished and the partitions were resumed, the first empty poll (before the fetch came back)
    met ``in_flight == 0`` and an idle clock that had run since the last message, and the service left."""
    images = sample_catalog.parent / "images"
    run = uuid.uuid4().hex[:8]
    topics = (f"idle-{run}.in", f"idle-{run}.out", f"idle-{run}.dlq")
    create_topics(broker.bootstrap_servers, list(topics), partitions=1)
    with ImageServer(images) as server:
        server.delay_s.update({p.name: 3.0 for p in images.iterdir()})  # every event takes 3 s > idle 2 s
        events = events_from_catalog(read_catalog(sample_catalog)[:12], server.base_url)
        send(broker.bootstrap_servers, topics[0], [(e["product_id"].encode(), orjson.dumps(e)) for e in events])
        group = f"g-{run}"
        env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group, ENRICH_MAX_IN_FLIGHT=4)
        log = tmp_path / "enrich.log"
        assert wait_exit(start_enrich(env, log, "--idle-exit-s", "2"), 180, log) == 0, tail(log)
    assert committed(broker.bootstrap_servers, group, topics[0], [0]) == {0: len(events)}, (
        "idle exit with unread input\n" + tail(log)
    )
