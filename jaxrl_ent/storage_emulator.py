"""A local Cloud Storage emulator for tests and dry runs of `gs://` workdirs.

`start()` runs the `gcp-storage-emulator` package's server in this process
(a background thread, in memory, on 127.0.0.1 at a free port; no network)
and returns an `Emulator` whose `env()` holds the environment variables that
point every client this project uses at it:

  STORAGE_EMULATOR_HOST              gcsfs (`etils.epath`'s gs:// backend)
                                     and google-cloud-storage (TensorBoard
                                     event files through tensorboardX)
  TENSORSTORE_GCS_HTTP_URL           tensorstore's `gcs` kvstore (orbax
                                     checkpoint arrays)
  GOOGLE_AUTH_TOKEN_FOR_TESTING      tensorstore: use this bearer token
                                     instead of looking for credentials
  FSSPEC_GCS_TOKEN=anon              gcsfs: no credential search
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
                                     gcsfs: skip the gRPC storage-layout
                                     call that recent gcsfs makes per bucket
                                     (the emulator has no gRPC endpoint)

Two gaps of the emulator are filled by `start()`: the JSON API's `moveTo`
(gcsfs's rename; on a failure gcsfs falls back to copy + delete, but only
after ~30 s of retries) is added as a server-side copy then delete, and
media downloads get the `x-goog-generation` header GCS sends (tensorstore
reads every object's generation from it: "Malformed StorageGeneration"
without it).

From a shell: `python launch/gcs_emulator.py --port=9023 --bucket=bucket`
prints the `export` lines and serves until interrupted.
"""

import dataclasses
import os
import socket
import sys
from http import HTTPStatus


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_for(url: str) -> dict[str, str]:
  """The environment variables that point the clients at `url`."""
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "FSSPEC_GCS_TOKEN": "anon",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


def _add_move_to():
  """Registers `POST .../o/{src}/moveTo/o/{dst}` with the emulator (once)."""
  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects
  if getattr(server, "_jaxrl_ent_move_to", False):
    return

  def move(request, response, storage, *args, **kwargs):
    del args, kwargs
    p = request.params
    try:
      # pylint: disable=protected-access
      dest = objects._copy(request.base_url, storage, p["bucket_name"],
                           p["object_id"], p["bucket_name"],
                           p["dest_object_id"])
      storage.delete_file(p["bucket_name"], p["object_id"])
      response.json(dest)
    except NotFound:
      response.status = HTTPStatus.NOT_FOUND

  original_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    original_download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      try:
        obj = storage.get_file_obj(request.params["bucket_name"],
                                   request.params["object_id"])
      except NotFound:
        return
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  objects.download = download  # `get` with alt=media calls it by name.
  route = (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
           r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$", {"POST": move})
  server.HANDLERS = (route,) + tuple(
      (regex, {m: (download if h is original_download else h)
               for m, h in handlers.items()})
      for regex, handlers in server.HANDLERS)
  server._jaxrl_ent_move_to = True  # pylint: disable=protected-access


@dataclasses.dataclass
class Emulator:
  """A running emulator; `stop()` ends it."""
  url: str
  _server: object

  def env(self) -> dict[str, str]:
    return env_for(self.url)

  def wipe(self):
    """Removes every object (buckets stay)."""
    self._server.wipe(keep_buckets=True)

  def stop(self):
    self._server.stop()


def start(buckets=("bucket",), *, host: str = "127.0.0.1",
          port: int = 0) -> Emulator:
  """Starts an in-memory emulator holding `buckets` (port 0: a free one)."""
  # pylint: disable=g-import-not-at-top
  import logging
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import buckets as buckets_lib
  # One line per request at INFO, and a traceback for each expected 404.
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  _add_move_to()
  port = port or _free_port()
  srv = server.create_server(host, port, in_memory=True)
  for name in buckets:
    buckets_lib.create_bucket(name, srv._storage)  # pylint: disable=protected-access
  srv.start()
  httpd = srv._api._httpd  # pylint: disable=protected-access
  default_error = httpd.handle_error

  def handle_error(request, client_address):
    # Clients (tensorstore, aiohttp) close kept-alive connections at will;
    # the stdlib server would print a traceback for each.
    if not isinstance(sys.exc_info()[1], (BrokenPipeError,
                                          ConnectionResetError)):
      default_error(request, client_address)
  httpd.handle_error = handle_error
  return Emulator(url=f"http://{host}:{port}", _server=srv)


def apply_env(emulator: Emulator) -> dict[str, str | None]:
  """Sets `emulator.env()` in `os.environ`; returns the previous values."""
  old = {k: os.environ.get(k) for k in emulator.env()}
  os.environ.update(emulator.env())
  return old


def restore_env(old: dict[str, str | None]):
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
