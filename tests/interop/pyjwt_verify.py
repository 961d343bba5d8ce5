"""Verifies ratchet's access tokens with PyJWT, a JWT library ratchet does not use, against the
JWK Set ratchet serves over HTTP: what any third-party verifier would do.

Reads {"jwks_uri", "issuer", "audience", "tokens": [{"name", "token"}]} on stdin and prints
{name: "ok:<sub>" | "rejected: <why>"} on stdout.
"""

import json
import sys

import jwt
from jwt import PyJWKClient


def verify(client, token, issuer, audience):
    header = jwt.get_unverified_header(token)
    # RFC 9068 §4: the resource server checks the type, as ratchet does.
    if header.get("typ") != "at+jwt":
        raise ValueError("typ is not at+jwt")
    key = client.get_signing_key_from_jwt(token)
    # Only the algorithm the key was published for: never the token's say-so.
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[key.algorithm_name],
        issuer=issuer,
        audience=audience,
        options={"require": ["exp", "iat", "iss", "sub", "aud"]},
    )
    return claims["sub"]


def main():
    request = json.load(sys.stdin)
    client = PyJWKClient(request["jwks_uri"], cache_keys=True)
    results = {}
    for case in request["tokens"]:
        try:
            results[case["name"]] = "ok:" + verify(client, case["token"], request["issuer"], request["audience"])
        except Exception as error:  # every refusal is an answer, not a crash
            results[case["name"]] = "rejected: %s: %s" % (type(error).__name__, error)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
