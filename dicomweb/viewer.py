"""The OHIF viewer (npm package @ohif/app, its prebuilt `dist`), installed by `make viewer`
(`manage.py installviewer`) into VIEWER_DIR and served at /viewer/ behind the admin's login,
configured for our /dicomweb/ root (same origin: the session cookie authenticates its
requests, no CORS needed)."""

import mimetypes
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from csp.decorators import csp_replace
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.urls import reverse
from django.utils.http import http_date
from django.views.static import was_modified_since

OHIF_PACKAGE = "@ohif/app@3.13.2"

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")

APP_CONFIG = """/* Written by `manage.py installviewer`: OHIF against this archive's DICOMweb. */
window.config = {
  routerBasename: '%(base)s',
  showStudyList: true,
  extensions: [],
  modes: [],
  maxNumberOfWebWorkers: 2,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'PACS archive',
        name: 'pacs',
        wadoUriRoot: '%(root)s',
        qidoRoot: '%(root)s',
        wadoRoot: '%(root)s',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


class ViewerUnavailable(Exception):
    """The viewer cannot be installed (no npm, no registry); the message says why."""


def viewer_dir() -> Path:
    return Path(settings.VIEWER_DIR)


def viewer_installed() -> bool:
    return (viewer_dir() / "index.html").is_file()


def viewer_install(*, base: str = "/viewer", root: str = "/dicomweb") -> Path:
    """Download OHIF_PACKAGE with `npm pack`, unpack its `dist` into VIEWER_DIR and write our
    app-config.js. Raises ViewerUnavailable."""
    target = viewer_dir()
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerUnavailable("npm is not installed (Debian package npm)")
    with tempfile.TemporaryDirectory() as work:
        try:
            subprocess.run(
                [npm, "pack", OHIF_PACKAGE, "--silent"],
                cwd=work,
                check=True,
                capture_output=True,
                timeout=900,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise ViewerUnavailable(
                f"npm pack {OHIF_PACKAGE} failed: {detail.decode(errors='replace')[-300:]}"
            ) from None
        [tarball] = Path(work).glob("*.tgz")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            archive.extractall(unpacked, members=members, filter="data")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(unpacked / "package" / "dist"), target)
    (target / "app-config.js").write_text(APP_CONFIG % {"base": base, "root": root})
    index_rebase(target, base)
    return target


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def index_rebase(target: Path, base: str) -> None:
    """Make the prebuilt index.html work under `base` and under our Content Security Policy:
    its absolute links (`/app.bundle.js`) and PUBLIC_URL point into `base`, and its one inline
    script becomes a file (the policy allows scripts from this site only)."""
    index = target / "index.html"
    html = index.read_text()
    prefix = base.rstrip("/") + "/"
    # Idempotent: links already under `base` stay as they are.
    html = re.sub(rf'(href|src)="/(?!/|{re.escape(prefix[1:])})', rf'\1="{prefix}', html)
    inline = _INLINE_SCRIPT.findall(html)
    scripts = []
    for n, code in enumerate(inline):
        name = f"inline-{n}.js"
        (target / name).write_text(code.replace('PUBLIC_URL="/"', f'PUBLIC_URL="{prefix}"'))
        scripts.append(f'<script src="{prefix}{name}"></script>')
    for code, tag in zip(inline, scripts, strict=True):
        html = html.replace(f"<script>{code}</script>", tag, 1)
    index.write_text(html)
    # webpack's public path, compiled in as "/": where the bundles load their chunks from.
    compiled = '__webpack_require__.p = "/";'
    for script in target.glob("*.js"):
        code = script.read_text(errors="surrogateescape")
        if compiled in code:
            rebased = code.replace(compiled, f'__webpack_require__.p = "{prefix}";')
            script.write_text(rebased, errors="surrogateescape")


# OHIF needs more than the archive's pages: WebAssembly codecs, web workers from blob: URLs,
# images and canvases from blob: and data:. Only /viewer/ gets this; scripts still come from
# this site only.
VIEWER_POLICY = {
    "script-src": ["'self'", "'wasm-unsafe-eval'", "'unsafe-eval'", "blob:"],
    "worker-src": ["'self'", "blob:"],
    "img-src": ["'self'", "data:", "blob:"],
    "connect-src": ["'self'", "blob:", "data:"],
    "font-src": ["'self'", "data:"],
    "media-src": ["'self'", "blob:"],
}


VIEW_PERMISSION = "archive.view_instance"
# Bundles with a content hash in their name never change: the browser keeps them.
_HASHED = re.compile(r"\.[0-9a-f]{16}\.(js|css)$")


@csp_replace(VIEWER_POLICY)
def viewer_file(request: HttpRequest, path: str = "") -> HttpResponse:
    """A file of the viewer, or index.html for the viewer's own routes (its study list,
    /viewer?StudyInstanceUIDs=...). Staff with the viewer role only: others are sent to the
    admin's login (or refused, 403). Not through admin_view, whose never_cache would make
    the browser fetch the viewer's 200 MB again on every visit."""
    user = request.user
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    if not user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied
    root = viewer_dir().resolve()
    if not (root / "index.html").is_file():
        return HttpResponse(
            "The viewer is not installed: run `make viewer`.", status=503, content_type="text/plain"
        )
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root):
        raise Http404("no such file")
    if not candidate.is_file():
        candidate = root / "index.html"
    # The same files for every user, who may have them was checked above: no `Vary: Cookie`
    # (the session's), with which the browser fetched the 17 MB app bundle again whenever a
    # cookie had changed since it kept it.
    request.session.accessed = False
    modified = candidate.stat().st_mtime
    if not was_modified_since(request.META.get("HTTP_IF_MODIFIED_SINCE"), modified):
        response = HttpResponseNotModified()
    else:
        response = FileResponse(candidate.open("rb"))
    response["Last-Modified"] = http_date(modified)
    if _HASHED.search(candidate.name):
        response["Cache-Control"] = "private, max-age=31536000, immutable"
    else:
        response["Cache-Control"] = "private, no-cache"
    return response
