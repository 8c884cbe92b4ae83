"""Tests that talk to a service beside them: the MQTT broker of suites/compose/docker-compose.yml.

They run on targets with a ``[compose]`` table (``--target=sim-colima-compose``,
``--target=sim-jetson-compose``), where the tests' service sets ``HIL_MQTT_BROKER``;
anywhere else (the ``local`` target, plain container targets) they skip with that reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from suites.compose.mqtt import MqttClient

BROKER = os.environ.get("HIL_MQTT_BROKER", "")

pytestmark = [
    pytest.mark.tier1,
    pytest.mark.skipif(not BROKER, reason="no MQTT broker beside the tests (HIL_MQTT_BROKER "
                       "unset): run on a [compose] target, e.g. --target=sim-colima-compose"),
]


@pytest.fixture
def client() -> Iterator[MqttClient]:
    mqtt = MqttClient(BROKER, f"hil-{uuid.uuid4().hex[:8]}")
    yield mqtt
    mqtt.close()


def test_a_published_message_is_read_back(client: MqttClient) -> None:
    topic = f"vision/embeddings/{uuid.uuid4().hex[:8]}"
    client.subscribe(topic)
    client.publish(topic, b'{"frame": 1, "embedding": [0.25, 0.5]}')
    assert client.receive() == (topic, b'{"frame": 1, "embedding": [0.25, 0.5]}')


def test_two_clients_see_each_other(client: MqttClient) -> None:
    topic = f"agents/{uuid.uuid4().hex[:8]}/status"
    client.subscribe(topic)
    other = MqttClient(BROKER, f"hil-{uuid.uuid4().hex[:8]}")
    try:
        other.publish(topic, b"ready")
    finally:
        other.close()
    assert client.receive() == (topic, b"ready")
