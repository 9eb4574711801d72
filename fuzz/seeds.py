#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (fuzz/corpus/<target>/): real inputs of each form,
so that libFuzzer starts past the first checks (a valid signature, a stored completion with
parked keys, an envelope that decodes). Run again after a format changes:

    python3 fuzz/seeds.py

Input layouts are those the targets in fuzz/fuzz_targets/ read (see their doc comments).
"""
import base64
import hashlib
import hmac
import json
import pathlib
import time

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
ROOT = CORPUS.parent.parent


def write(target, name, data):
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


# --- ingress: [route index] header lines "\n\n" body -------------------------------------
ROUTES = ["github", "stripe", "slack", "standard", "shopify", "internal", "demo", "nowhere"]


def request(route, headers, body):
    head = "\n".join(f"{name}:{value}" for name, value in headers)
    return bytes([ROUTES.index(route)]) + head.encode() + b"\n\n" + body


def mac(secret, message):
    return hmac.new(secret, message, hashlib.sha256)


def ingress():
    now = str(int(time.time()))
    github = json.dumps({"repository": {"full_name": "acme/app"}, "ref": "main"}).encode()
    write("ingress", "github", request("github", [
        ("content-type", "application/json"),
        ("x-github-event", "push"),
        ("x-github-delivery", "7f0c1c6e-1d2e-4a5b-8c9d-0e1f2a3b4c5d"),
        ("x-hub-signature-256", "sha256=" + mac(b"gh-secret", github).hexdigest()),
    ], github))
    stripe = json.dumps({"id": "evt_1", "type": "invoice.paid",
                         "data": {"object": {"customer": "cus_1"}}}).encode()
    signed = mac(b"whsec_stripe_test", now.encode() + b"." + stripe).hexdigest()
    write("ingress", "stripe", request("stripe", [
        ("content-type", "application/json"),
        ("stripe-signature", f"t={now},v1={signed}"),
    ], stripe))
    slack = json.dumps({"event": {"type": "message"}}).encode()
    signed = mac(b"slack-signing-secret", b"v0:" + now.encode() + b":" + slack).hexdigest()
    write("ingress", "slack", request("slack", [
        ("content-type", "application/json"),
        ("x-slack-request-timestamp", now),
        ("x-slack-signature", "v0=" + signed),
    ], slack))
    standard = json.dumps({"type": "user.created", "data": {"id": 1}}).encode()
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signed = base64.b64encode(mac(key, b"msg_1." + now.encode() + b"." + standard).digest())
    write("ingress", "standard", request("standard", [
        ("content-type", "application/json"),
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", now),
        ("webhook-signature", "v1," + signed.decode()),
    ], standard))
    shopify = json.dumps({"id": 1, "total_price": "10.00"}).encode()
    write("ingress", "shopify", request("shopify", [
        ("content-type", "application/json"),
        ("x-shopify-shop-domain", "acme.myshopify.com"),
        ("x-shopify-hmac-sha256", base64.b64encode(mac(b"shpss_secret", shopify).digest()).decode()),
    ], shopify))
    write("ingress", "internal", request("internal", [
        ("content-type", "text/plain"), ("x-api-key", "tok-123")], b"hello"))
    write("ingress", "demo", request("demo", [
        ("content-type", "application/json"),
        ("x-event-type", "order.created"),
        ("idempotency-key", "order-1"),
    ], json.dumps({"key": "customer-1", "amount": 12}).encode()))
    write("ingress", "demo-form", request("demo", [
        ("content-type", "application/x-www-form-urlencoded")], b"key=a&b=c"))
    write("ingress", "nowhere", request("nowhere", [], b"{}"))


# --- completion: [commit point / 1000] stored form -----------------------------------------
def varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def completion():
    # No parked keys, 10 records known past the commit point, open: 2 and 5..7.
    runs = varint(0) + varint(10) + varint(2) + varint(1) + varint(2) + varint(3)
    write("completion", "open-records", bytes([3]) + runs)
    # The earlier form: one parked key (hash, partition, last offset), then a commit point.
    parked = varint(1) + (0x1122334455667788).to_bytes(8, "big") + varint(0) + varint(41)
    write("completion", "parked-v1", bytes([0]) + parked + varint(0))
    # Version 2: two parking topics named, three keys, one with no topic kept.
    topics = b"".join(varint(len(t)) + t for t in [b"orders.parking", b"orders.parking2"])
    keys = b"".join(
        k.to_bytes(8, "big") + varint(topic) + varint(part) + varint(last)
        for k, topic, part, last in [(1, 1, 0, 7), (2, 2, 3, 900), (3, 0, 1, 12)])
    write("completion", "parked-v2", bytes([1, 0x7F]) + varint(2) + topics + varint(3) + keys
          + varint(4) + varint(1) + varint(1))
    # Kafka's textual form of the one above.
    form = bytes([0x7F]) + varint(2) + topics + varint(3) + keys + varint(4) + varint(1) + varint(1)
    write("completion", "parked-v2-text",
          bytes([1]) + b"hb1:" + base64.urlsafe_b64encode(form).rstrip(b"="))


# --- envelope: [key length] key, then the record's value -----------------------------------
def field(number, value):
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def envelope():
    header = field(1, b"content-type") + field(2, b"application/json")
    raw = field(1, b"x-raw") + field(3, b"\xff\x00")
    stamp = field(1, 1_767_225_600) + field(2, 500)
    attribute = field(1, b"tenant") + field(2, b"acme")
    value = b"".join([
        field(1, b"0190f1f0-0000-7000-8000-000000000001"), field(2, b"demo"),
        field(3, b"order.created"), field(4, stamp), field(5, b"customer-1"),
        field(6, b"POST"), field(7, b"/hooks/demo"), field(8, b"a=1"),
        field(9, header), field(9, raw), field(10, b"application/json"),
        field(11, b'{"amount":12}'), field(12, b"order-1"),
        field(13, b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        field(14, b"congo=t61rcWkgMzE"), field(15, attribute), field(16, b"10.0.0.1:5000"),
    ])
    write("envelope", "full", bytes([10]) + b"customer-1" + value)
    write("envelope", "bare", bytes([0]) + field(1, b"id-1") + field(11, b"x"))


# --- config: the repository's own config files ---------------------------------------------
def config():
    for path in sorted((ROOT / "config").glob("*.yaml")):
        write("config", path.stem, path.read_bytes())
    # CEL in filters and transforms, parsed when the config loads.
    write("config", "expressions", """broker: { kind: embedded, embedded: { dir: ./data } }
server: { egress: { allow_networks: [10.0.0.0/8, "fd00::/8"], guard_config: true } }
routes:
  - { name: r, topic: t, verify: { kind: none }, key: { json: /key } }
subscriptions:
  - name: s
    topics: [t]
    url: http://127.0.0.1:9000/hook
    filter: { types: ["invoice.*"], expression: 'has(body.amount) && body.amount > 100 && headers["x-tenant"] == "acme"' }
    transform: { expression: '{"id": id, "cents": body.amount * 100, "tags": [type, key]}' }
""")


# --- expression: the expression, a newline, the body ------------------------------------------
def expression():
    body = json.dumps({"amount": 150, "items": [{"sku": "a", "qty": 2}], "customer": {"tier": "gold"}})
    for name, source in [
        ("filter", 'type.startsWith("invoice.") && has(body.amount) && body.amount > 100'),
        ("headers", 'headers["x-tenant"] == "acme" && key.matches("^customer-[0-9]+$")'),
        ("lists", 'body.items.exists(i, i.qty > 1) && size(body.items) == 1'),
        ("transform", '{"id": id, "cents": body.amount * 100, "tier": body.customer.tier, "at": time}'),
    ]:
        write("expression", name, source + "\n" + body)


if __name__ == "__main__":
    ingress()
    completion()
    envelope()
    config()
    expression()
