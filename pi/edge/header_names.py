"""A Lua filter refusing headers that cannot become gRPC metadata (400 instead of a 500).

Envoy forwards request headers to the services as gRPC metadata. HTTP allows header
names and values gRPC does not (`|yrad`, `+x`, a value with a byte above 0x7e), and a
gRPC server answers such a call with INTERNAL: the client would see a 500 for its own
malformed request. Names with underscores are already refused by the connection manager.
"""

from __future__ import annotations

from typing import Any

from pi.edge._values import type_url

_LUA = "envoy.extensions.filters.http.lua.v3.Lua"
_CODE = r"""
function envoy_on_request(handle)
  for key, value in pairs(handle:headers()) do
    if key:sub(1, 1) ~= ":" then
      if key:find("[^0-9a-z_.%-]") then
        handle:respond({[":status"] = "400"},
          "Header name '" .. key .. "' is not allowed: use a-z, 0-9, '-' and '.'.")
        return
      end
      if key:sub(-4) ~= "-bin" and value:find("[^\32-\126]") then
        handle:respond({[":status"] = "400"},
          "The value of header '" .. key .. "' must be printable ASCII.")
        return
      end
    end
  end
end
"""


def header_names_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {"@type": type_url(_LUA), "default_source_code": {"inline_string": _CODE}},
    }
