"""C-FIND, C-MOVE and C-GET served by our own functions instead of pynetdicom's handler
protocol.

pynetdicom's Query/Retrieve SCP opens the C-MOVE destination association itself and answers
0xA801 with no counts when the destination cannot be reached; it also wants every sub-operation
as a decoded Dataset before it knows which transfer syntaxes the receiver accepted. Here the
Query/Retrieve service class pynetdicom instantiates for each request is a subclass whose
C-MOVE and C-GET go to the function given to `enable` (receiver.query_handlers.serve_retrieve),
which sends the pending and final responses itself; C-FIND likewise goes to
query_handlers.serve_find, which encodes its responses without pydicom's command-set
machinery (a third of the time per response).

This reaches into pynetdicom (package docstring, 12): the `uid_to_service_class` that
pynetdicom.association imported is wrapped, and the subclass overrides the private
`_c_find_scp`, `_move_scp` and `_get_scp`. Applied by receiver.transport.install();
tests/e2e/test_query_retrieve.py covers the services against DCMTK and pynetdicom.
"""

from collections.abc import Callable
from typing import Any

from pynetdicom import association as _association
from pynetdicom.service_class import QueryRetrieveServiceClass

Serve = Callable[[QueryRetrieveServiceClass, Any, Any, str], None]


class _RetrieveService(QueryRetrieveServiceClass):
    def _c_find_scp(self, req: Any, context: Any) -> None:
        serve = self.assoc.ae.__dict__.get("_receiver_find")
        if serve is None:
            super()._c_find_scp(req, context)
        else:
            serve(self, req, context)

    def _move_scp(self, req: Any, context: Any) -> None:
        serve = self.assoc.ae.__dict__.get("_receiver_retrieve")
        if serve is None:
            super()._move_scp(req, context)
        else:
            serve(self, req, context, "move")

    def _get_scp(self, req: Any, context: Any) -> None:
        serve = self.assoc.ae.__dict__.get("_receiver_retrieve")
        if serve is None:
            super()._get_scp(req, context)
        else:
            serve(self, req, context, "get")


def enable(ae: Any, serve: Serve, find: Callable[[Any, Any, Any], None]) -> None:
    """Serve C-MOVE and C-GET requests to `ae`'s associations with `serve`, C-FIND with
    `find`."""
    ae.__dict__["_receiver_retrieve"] = serve
    ae.__dict__["_receiver_find"] = find


def install() -> None:
    """Make pynetdicom use the subclass for Query/Retrieve requests (idempotent)."""
    original = _association.uid_to_service_class
    if getattr(original, "retrieve_service", False):
        return

    def uid_to_service_class(uid: str) -> type:
        service = original(uid)
        return _RetrieveService if service is QueryRetrieveServiceClass else service

    uid_to_service_class.retrieve_service = True  # type: ignore[attr-defined]
    _association.uid_to_service_class = uid_to_service_class  # type: ignore[assignment]
