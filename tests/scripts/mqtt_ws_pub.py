#!/usr/bin/python3
"""Publishes MQTT messages over WebSocket with paho-mqtt and prints the outcome as JSON.

    mqtt_ws_pub.py HOST PORT PATH TOPIC QOS COUNT [--ca FILE] [--user USER --password PASSWORD]

Each message's payload is "message N". Prints {"connack": RC, "published": N} once every
publish is acknowledged (QoS 1) or sent (QoS 0), or {"connack": RC} when the connection is
refused, or {"error": ...}.
"""
import argparse
import json
import ssl
import sys
import threading

import paho.mqtt.client as mqtt


def main():
    p = argparse.ArgumentParser()
    for name in ["host", "port", "path", "topic", "qos", "count"]:
        p.add_argument(name)
    p.add_argument("--ca")
    p.add_argument("--user")
    p.add_argument("--password")
    a = p.parse_args()

    result = {}
    connected = threading.Event()
    done = threading.Event()
    acked = set()

    try:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id="paho-ws",
                             transport="websockets")
    except AttributeError:  # paho-mqtt 1.x
        client = mqtt.Client(client_id="paho-ws", transport="websockets")
    client.ws_set_options(path=a.path)
    if a.ca:
        client.tls_set(ca_certs=a.ca, cert_reqs=ssl.CERT_REQUIRED)
    if a.user:
        client.username_pw_set(a.user, a.password)

    def on_connect(c, userdata, flags, rc):
        result["connack"] = rc
        connected.set()

    def on_publish(c, userdata, mid):
        acked.add(mid)
        if len(acked) == int(a.count):
            done.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(a.host, int(a.port), keepalive=30)
    except Exception as e:  # noqa: BLE001 - reported to the test
        print(json.dumps({"error": str(e)}))
        return
    client.loop_start()
    if not connected.wait(20):
        print(json.dumps({"error": "no CONNACK"}))
        return
    if result["connack"] != 0:
        print(json.dumps(result))
        return
    for i in range(int(a.count)):
        client.publish(a.topic, "message %d" % i, qos=int(a.qos))
    if not done.wait(60):
        result["error"] = "only %d of %s acknowledged" % (len(acked), a.count)
    result["published"] = len(acked)
    client.disconnect()
    client.loop_stop()
    print(json.dumps(result))


main()
