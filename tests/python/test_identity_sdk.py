"""The official azure-communication-identity 1.5.0 SDK against a running Switchboard (ACS Identity REST shape)."""
import base64
import json
from datetime import timedelta

import pytest
from azure.communication.identity import CommunicationIdentityClient, CommunicationTokenScope
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from websockets.sync.client import connect


def ws_auth(server, token):
    """Opens the signaling socket and sends auth; returns the response or the close (code, reason)."""
    with connect(f"ws://127.0.0.1:{server['http']}/calling/v1/ws") as ws:
        ws.send(json.dumps({"type": "auth", "id": 1, "token": token}))
        try:
            return json.loads(ws.recv(timeout=10))
        except Exception:  # closed by the server
            return {"closed": ws.close_code, "reason": ws.close_reason}


def test_every_identity_operation(server):
    client = CommunicationIdentityClient.from_connection_string(server["connection_string"])
    user = client.create_user()
    assert user.properties["id"].startswith("8:acs:")

    user2, token = client.create_user_and_token(scopes=[CommunicationTokenScope.VOIP])
    assert token.token.count(".") == 2
    assert token.expires_on

    t = client.get_token(user, [CommunicationTokenScope.VOIP], token_expires_in=timedelta(minutes=60))
    claims = json.loads(base64.urlsafe_b64decode(t.token.split(".")[1] + "=="))
    assert claims["sub"] == user.properties["id"]
    assert claims["exp"] - claims["iat"] == 3600

    assert ws_auth(server, t.token)["ok"] is True
    client.revoke_tokens(user)
    refused = ws_auth(server, t.token)
    assert refused.get("closed") == 4401, refused
    assert refused["reason"] == "token revoked"

    client.delete_user(user)
    client.delete_user(user2)
    with pytest.raises(ResourceNotFoundError):
        client.get_token(user, [CommunicationTokenScope.VOIP])


def test_token_lifetime_bounds(server):
    client = CommunicationIdentityClient.from_connection_string(server["connection_string"])
    user = client.create_user()
    with pytest.raises(HttpResponseError) as e:
        client.get_token(user, [CommunicationTokenScope.VOIP], token_expires_in=timedelta(minutes=30))
    assert e.value.status_code == 400
    assert "expiresInMinutes" in str(e.value)


def test_wrong_access_key_is_401(server):
    endpoint = server["connection_string"].split(";accesskey=")[0]
    wrong = endpoint + ";accesskey=" + base64.b64encode(b"\x01" * 64).decode()
    client = CommunicationIdentityClient.from_connection_string(wrong)
    with pytest.raises(ClientAuthenticationError) as e:
        client.create_user()
    assert e.value.status_code == 401
