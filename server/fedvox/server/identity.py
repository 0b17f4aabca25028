"""Who is calling: the common name of the client certificate that the TLS handshake verified.

On a mutual-TLS server every caller holds a certificate signed by the federation's CA (the
handshake refuses the rest); a site's CN is its site id and the operator's is "admin". The
site id inside a request is only believed when it is the caller's own. A plaintext server
(started with `insecure`, and warned about) has no identities, so nothing is checked there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import grpc

from fedvox.tls import ADMIN_CN
from fedvox.wire.errors import WireError


def peer_name(context: grpc.ServicerContext) -> str | None:
    """The caller's certificate CN, or None on a plaintext connection."""
    # each property holds a list of values (grpc-stubs says bytes, which is wrong)
    auth = cast(Mapping[str, Iterable[bytes]], context.auth_context())
    if list(auth.get("transport_security_type", ())) != [b"ssl"]:
        return None
    names = list(auth.get("x509_common_name", ()))
    if len(names) != 1 or not names[0]:
        raise WireError(
            grpc.StatusCode.UNAUTHENTICATED, "the client certificate has no common name"
        )
    return names[0].decode("utf-8", "replace")


def require_site(context: grpc.ServicerContext, site_id: str) -> None:
    """Refuse a request that names a site other than the caller's certificate."""
    name = peer_name(context)
    if name is None or (name == site_id and name != ADMIN_CN):
        return
    if name == ADMIN_CN:
        raise WireError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the operator certificate ({ADMIN_CN!r}) cannot act as site {site_id!r}",
        )
    raise WireError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"the certificate is for site {name!r}, but the request names site {site_id!r}",
    )


def require_admin(context: grpc.ServicerContext) -> None:
    """Refuse an operator call from anyone but the operator's certificate."""
    name = peer_name(context)
    if name is not None and name != ADMIN_CN:
        raise WireError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"only the operator certificate ({ADMIN_CN!r}) may call AdminService, "
            f"not site {name!r}",
        )
