#!/usr/bin/env python3
"""A Python client of Starling, using only stubs generated from proto/ by grpcio-tools.

    python3 -m grpc_tools.protoc -I proto --python_out=DIR --grpc_python_out=DIR \\
        $(find proto/starling -name '*.proto')
    python3 tests/python/client_test.py --stubs DIR --gateway HOST:PORT
    python3 tests/python/client_test.py --stubs DIR --tweet A --follower B --timeline C

With --gateway every call goes to the gateway (either of its ports): alice and bob sign up
with starling.auth.v1.AuthService and send their tokens as `authorization: Bearer` metadata;
a write without a token is UNAUTHENTICATED and one as someone else PERMISSION_DENIED.
Otherwise straight to the services, which register the names with RegisterUsers. alice
follows bob (fresh names), bob posts, alice's home timeline shows the tweet within 20 s, and
an empty text is INVALID_ARGUMENT. Prints a summary; exits 1 on any
failure (the reason on stderr), 2 on bad usage. tests/python_client.rs runs it.
"""

import argparse
import os
import secrets
import sys
import time

CALL_TIMEOUT_S = 5.0
TIMELINE_WITHIN_S = 20.0
CONNECT_WITHIN_S = 20.0


class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", required=True, help="directory holding the generated starling/ package")
    parser.add_argument("--gateway", help="the gateway's gRPC address (HOST:PORT)")
    parser.add_argument("--tweet", help="the tweet service's address")
    parser.add_argument("--follower", help="the follower service's address")
    parser.add_argument("--timeline", help="the timeline service's address")
    parser.add_argument("--tls-dir", help="call the services over mutual TLS with DIR/ca.crt and the identity's certificate (as `starling ca` writes them)")
    parser.add_argument("--identity", default="admin", help="whose certificate to present with --tls-dir (default: admin)")
    args = parser.parse_args()
    direct = (args.tweet, args.follower, args.timeline)
    if bool(args.gateway) == any(direct) or (not args.gateway and not all(direct)):
        parser.error("give either --gateway, or all of --tweet, --follower and --timeline")

    sys.path.insert(0, args.stubs)
    import grpc
    from starling.auth.v1 import auth_pb2, auth_pb2_grpc
    from starling.follower.v1 import follower_pb2, follower_pb2_grpc
    from starling.timeline.v1 import timeline_pb2, timeline_pb2_grpc
    from starling.tweet.v1 import tweet_pb2, tweet_pb2_grpc

    if args.gateway:
        target = f"gateway {args.gateway}"
        shared = grpc.insecure_channel(args.gateway)
        channels = {"tweet": shared, "follower": shared, "timeline": shared}
    else:
        target = f"services tweet={args.tweet} follower={args.follower} timeline={args.timeline}"

        def channel(service, address):
            if not args.tls_dir:
                return grpc.insecure_channel(address)
            read = lambda name: open(os.path.join(args.tls_dir, name), "rb").read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read("ca.crt"),
                private_key=read(f"{args.identity}.key"),
                certificate_chain=read(f"{args.identity}.crt"),
            )
            # A service's certificate names the service (and localhost/loopback).
            return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", service)])

        channels = {
            "tweet": channel("tweet", args.tweet),
            "follower": channel("follower", args.follower),
            "timeline": channel("timeline", args.timeline),
        }
    tweets = tweet_pb2_grpc.TweetServiceStub(channels["tweet"])
    follows = follower_pb2_grpc.FollowerServiceStub(channels["follower"])
    timelines = timeline_pb2_grpc.TimelineServiceStub(channels["timeline"])

    suffix = secrets.token_hex(4)
    alice, bob = f"py_alice_{suffix}", f"py_bob_{suffix}"
    text = f"Finished a great novel for my book club {suffix}"
    started = time.monotonic()
    print(f"python client against {target}: {alice} follows {bob}", flush=True)

    def rpc_error(what, e):
        return Failure(f"{what}: {e.code().name}: {e.details()}")

    try:
        # The first call is retried while the target is still coming up (UNAVAILABLE).
        def until_up(what, call):
            deadline = time.monotonic() + CONNECT_WITHIN_S
            while True:
                try:
                    return call()
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                        raise rpc_error(what, e)
                    time.sleep(0.2)

        as_alice = as_bob = None
        if args.gateway:
            accounts = auth_pb2_grpc.AuthServiceStub(shared)
            password = f"pw-{suffix}-not-common"

            def sign_up(user):
                session = until_up(
                    "SignUp",
                    lambda: accounts.SignUp(
                        auth_pb2.Credentials(user=user, password=password), timeout=CALL_TIMEOUT_S
                    ),
                )
                check(session.user == user and session.token, f"SignUp({user}) answered {session}")
                return (("authorization", f"Bearer {session.token}"),)

            as_alice, as_bob = sign_up(alice), sign_up(bob)
            try:
                follows.Follow(follower_pb2.FollowRequest(follower=alice, followee=bob), timeout=CALL_TIMEOUT_S)
                raise Failure("Follow without a token succeeded through the gateway")
            except grpc.RpcError as e:
                check(
                    e.code() == grpc.StatusCode.UNAUTHENTICATED,
                    f"Follow without a token: {e.code().name}, want UNAUTHENTICATED",
                )
            try:
                tweets.CreateTweet(
                    tweet_pb2.CreateTweetRequest(author=bob, text="forged"),
                    metadata=as_alice,
                    timeout=CALL_TIMEOUT_S,
                )
                raise Failure("alice posted as bob through the gateway")
            except grpc.RpcError as e:
                check(
                    e.code() == grpc.StatusCode.PERMISSION_DENIED,
                    f"CreateTweet as another user: {e.code().name}, want PERMISSION_DENIED",
                )
        else:
            until_up(
                "RegisterUsers",
                lambda: follows.RegisterUsers(
                    follower_pb2.RegisterUsersRequest(users=[alice, bob]), timeout=CALL_TIMEOUT_S
                ),
            )
        try:
            follows.Follow(
                follower_pb2.FollowRequest(follower=alice, followee=f"py_nobody_{suffix}"),
                metadata=as_alice,
                timeout=CALL_TIMEOUT_S,
            )
            raise Failure("Follow of an unregistered user succeeded")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"Follow of nobody: {e.code().name}, want NOT_FOUND")
        followed = follows.Follow(
            follower_pb2.FollowRequest(follower=alice, followee=bob), metadata=as_alice, timeout=CALL_TIMEOUT_S
        )
        check(followed.changed, f"Follow {alice}->{bob}: changed=false for a new edge")
        check(followed.HasField("followed_at"), "Follow: no followed_at")
        again = follows.Follow(
            follower_pb2.FollowRequest(follower=alice, followee=bob), metadata=as_alice, timeout=CALL_TIMEOUT_S
        )
        check(not again.changed, "Follow twice: the second must say changed=false")
        counts = follows.GetFollowCounts(follower_pb2.GetFollowCountsRequest(user=bob), timeout=CALL_TIMEOUT_S)
        check(counts.followers == 1, f"GetFollowCounts({bob}).followers = {counts.followers}, want 1")

        created = tweets.CreateTweet(
            tweet_pb2.CreateTweetRequest(author=bob, text=text), metadata=as_bob, timeout=CALL_TIMEOUT_S
        )
        tweet = created.tweet
        check(tweet.id != 0, "CreateTweet: id 0")
        check(tweet.author == bob and tweet.text == text, f"CreateTweet answered {tweet}")
        check(tweet.HasField("created_at") and tweet.created_at.seconds > 0, "CreateTweet: no created_at")
        got = tweets.GetTweet(tweet_pb2.GetTweetRequest(id=tweet.id), timeout=CALL_TIMEOUT_S).tweet
        check(got.id == tweet.id and got.text == text, f"GetTweet({tweet.id}) answered {got}")

        posted_at = time.monotonic()
        deadline = posted_at + TIMELINE_WITHIN_S
        seen = []
        while True:
            home = timelines.GetHomeTimeline(
                timeline_pb2.GetHomeTimelineRequest(user=alice, page_size=20), timeout=CALL_TIMEOUT_S
            )
            seen = [t.id for t in home.tweets]
            if tweet.id in seen:
                entry = home.tweets[seen.index(tweet.id)]
                break
            check(
                time.monotonic() < deadline,
                f"tweet {tweet.id} not in {alice}'s home timeline within {TIMELINE_WITHIN_S:.0f} s "
                f"(it holds {seen})",
            )
            time.sleep(0.2)
        delivered_ms = (time.monotonic() - posted_at) * 1000
        check(entry.author == bob and entry.text == text, f"timeline entry {entry}")
        check(seen[0] == tweet.id, f"the newest entry must come first: {seen}")

        try:
            tweets.CreateTweet(
                tweet_pb2.CreateTweetRequest(author=bob, text=""), metadata=as_bob, timeout=CALL_TIMEOUT_S
            )
            raise Failure("CreateTweet with an empty text succeeded; want INVALID_ARGUMENT")
        except grpc.RpcError as e:
            check(
                e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                f"CreateTweet with an empty text: {e.code().name} ({e.details()}), want INVALID_ARGUMENT",
            )
            invalid_details = e.details()
    except grpc.RpcError as e:
        print(f"FAIL ({target}): {rpc_error('call', e)}", file=sys.stderr)
        return 1
    except Failure as e:
        print(f"FAIL ({target}): {e}", file=sys.stderr)
        return 1
    finally:
        for ch in {id(c): c for c in channels.values()}.values():
            ch.close()

    total_ms = (time.monotonic() - started) * 1000
    print(
        f"PASS ({target}): Follow {alice}->{bob} (changed, then idempotent), "
        f"CreateTweet {tweet.id}, in {alice}'s home timeline after {delivered_ms:.0f} ms, "
        f"empty text -> INVALID_ARGUMENT ({invalid_details!r}); {total_ms:.0f} ms in all",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
