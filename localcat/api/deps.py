"""What a route is handed: its caller (the key gate's principal) and the server's use cases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from localcat.auth import Principal
from localcat.usecases import UseCases


def _caller(request: Request) -> Principal:
    return request.state.principal


def _usecases(request: Request) -> UseCases:
    return request.app.state.usecases


CallerDep = Annotated[Principal, Depends(_caller)]
UseCasesDep = Annotated[UseCases, Depends(_usecases)]
