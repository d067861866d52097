"""Every Redis key and channel name the server uses, built in this one module (SPEC §2)."""

from __future__ import annotations

import re

PREFIX = "rm"

# Channels apps publish to; the server PSUBSCRIBEs to all of them at once.
PATTERN = f"{PREFIX}.*"
USER_CHANNEL = f"{PREFIX}.users."
GROUP_CHANNELS = (f"{PREFIX}.channels.", f"{PREFIX}.groups.")

# 1-256 characters, no ':', no whitespace, no control characters (C0, DEL, C1).
_UID = re.compile(r"[^:\s\x00-\x1f\x7f-\x9f]{1,256}")
MAX_ID_LENGTH = 256


def valid_id(value: object) -> bool:
    """Tell whether `value` may name a user or a group (SPEC §4).

    The one place this rule lives. A uid must also encode as UTF-8: one with a lone
    surrogate could be accepted from a socket but never written to Redis, and every
    script call carrying it (announcing the server's sockets after a reconnect among
    them) would fail.
    """
    if not isinstance(value, str) or _UID.fullmatch(value) is None:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode(raw: bytes) -> str:
    """A channel or member name read from Redis, as text that `valid_id` judges.

    Bytes that are not UTF-8 become lone surrogates, which `valid_id` refuses, rather
    than U+FFFD, which would map a bad name onto a real user's.
    """
    return raw.decode("utf-8", "surrogateescape")


def printable(text: str, limit: int = 300) -> str:
    """`text` cut to `limit` characters, safe to log: undecodable bytes shown escaped."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def user_channel(uid: str) -> str:
    return f"{USER_CHANNEL}{uid}"


def queue_key(uid: str) -> str:
    """The list of envelopes waiting for `uid`, oldest first."""
    return f"{PREFIX}:users:{uid}:messages"


# Every user's queue, for SCAN MATCH (the operators' page looks for the deepest ones).
QUEUE_KEY_PATTERN = f"{PREFIX}:users:*:messages"


def uid_of_queue_key(key: str) -> str | None:
    """The uid whose queue `key` is; None if `key` is not a valid user's queue."""
    head, tail = f"{PREFIX}:users:", ":messages"
    if not (key.startswith(head) and key.endswith(tail)):
        return None
    uid = key[len(head):-len(tail)]
    return uid if valid_id(uid) else None


def user_key_key(uid: str) -> str:
    """The string holding `uid`'s authentication token (secure mode)."""
    return f"{PREFIX}:users:{uid}:key"


def identify_failures_key(kind: str, ident: str) -> str:
    """Failed identifies in the current window for a uid (`kind` "uid") or a client
    address ("address"), shared by every server; expires with the window."""
    return f"{PREFIX}:limits:identify:{kind}:{ident}"


def group_channel(cid: str) -> str:
    """The channel an app publishes to for every member of group `cid`."""
    return f"{GROUP_CHANNELS[0]}{cid}"


def group_members_key(cid: str) -> str:
    return f"{PREFIX}:channels:{cid}:subscribers"


def server_key(server_id: str) -> str:
    """A server's heartbeat; it expires when the server stops refreshing it."""
    return f"{PREFIX}:servers:{server_id}"


SERVERS_KEY = f"{PREFIX}:servers"


def inflight_key(server_id: str, uid: str) -> str:
    """Messages a server has taken for `uid` but not yet seen delivered (a sorted set)."""
    return f"{PREFIX}:inflight:{server_id}:{uid}"


def inflight_users_key(server_id: str) -> str:
    """The uids that have an in-flight set on `server_id`, so a survivor can find them."""
    return f"{PREFIX}:inflight:{server_id}"


def parse_channel(channel: str) -> tuple[str, str] | None:
    """Split a channel into ("user" | "group", id); None if it is not one of ours."""
    if channel.startswith(USER_CHANNEL):
        kind, ident = "user", channel[len(USER_CHANNEL):]
    else:
        for prefix in GROUP_CHANNELS:
            if channel.startswith(prefix):
                kind, ident = "group", channel[len(prefix):]
                break
        else:
            return None
    return (kind, ident) if valid_id(ident) else None


# Presence and process events of every server, in the order of the messages (see
# cluster.py). Outside the `rm.*` pattern so that apps' channels and ours never mix.
CLUSTER_CHANNEL = f"{PREFIX}:cluster"
CLUSTER_SEQ_KEY = f"{PREFIX}:cluster:seq"  # numbers the events
CLUSTER_ERA_KEY = f"{PREFIX}:cluster:era"  # set once per Redis data set; starts message ids
SOCKETS_KEY = f"{PREFIX}:cluster:sockets"  # hash: "$server $sid" -> "$order $uid"
DRAINING_KEY = f"{PREFIX}:cluster:draining"  # hash: uid -> event number its drain began at
USER_SOCKETS_PREFIX = f"{PREFIX}:cluster:users:"


# The inbox (SPEC §9): a stream read by every server through one consumer group. The
# server holding the reader's lease forwards each entry into the sequence on
# INBOX_CHANNEL (inside the apps' pattern, so that every server reads it in its place
# among the PUBLISHes), framed with its entry id: `inbox.frame`.
INBOX_KEY = f"{PREFIX}:inbox"
INBOX_GROUP = PREFIX
INBOX_CHANNEL = f"{PREFIX}.inbox"
INBOX_READER_KEY = f"{PREFIX}:inbox:reader"  # the lease: the server id that forwards entries


def inbox_dedupe_key(key: str) -> str:
    """Which entry an inbox `key` was first given to, for `inbox_key_ttl` seconds."""
    return f"{PREFIX}:inbox:keys:{key}"


def inbox_routed_key(entry_id: str) -> str:
    """The servers that routed their part of a forwarded inbox entry (`routed.lua`)."""
    return f"{PREFIX}:inbox:routed:{entry_id}"


def user_sockets_key(uid: str) -> str:
    """The sorted set of `uid`'s identified sockets on every server, oldest first."""
    return f"{USER_SOCKETS_PREFIX}{uid}"


def tombstone_key(server_id: str) -> str:
    """Set by the survivor that declared `server_id` dead: only one may, once."""
    return f"{PREFIX}:servers:{server_id}:down"


def merged_key(uid: str) -> str:
    """Ids merged lately into `uid`'s queue by a redo, so that several redoers merge each once."""
    return f"{PREFIX}:users:{uid}:merged"


def stopped_key(server_id: str) -> str:
    """Set by a server that stopped on purpose, once it reads nothing more: the others
    may declare it dead at once, even on a Redis too young to tell by its connections."""
    return f"{PREFIX}:servers:{server_id}:stopped"


def checkpoint_key(server_id: str) -> str:
    """The last event before which `server_id` has handled every message for good."""
    return f"{PREFIX}:servers:{server_id}:checkpoint"


def client_name(server_id: str) -> str:
    """The name our Redis connections carry, so other servers can see we are alive."""
    return f"rm-server-{server_id}"
