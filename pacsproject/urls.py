"""The admin, with the staff pages beside it. Every page goes through the admin site's login
(`admin.site.admin_view`): staff only, nothing with patient data visible without it."""

from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from archive import views as archive_views
from dicomweb.upload import upload_page
from dicomweb.viewer import viewer_file
from dicomweb.zipdownload import zip_download
from receiver import views as receiver_views


def staff(view, permission: str):
    """The admin's staff login, then the role's permission (audit.roles): 403 without it."""
    return admin.site.admin_view(permission_required(permission, raise_exception=True)(view))


# Patient data needs the viewer role (or more); the receiver's pages the association log.
IMAGES, RECEIVER = "archive.view_instance", "receiver.view_associationlog"


urlpatterns = [
    # No public site: the root leads to the dashboard (through the admin's login).
    path("", RedirectView.as_view(pattern_name="archive-dashboard"), name="home"),
    path("admin/dashboard/", staff(archive_views.dashboard, IMAGES), name="archive-dashboard"),
    path("admin/status/", staff(receiver_views.status_page, RECEIVER), name="receiver-status"),
    path(
        "admin/status.json",
        staff(receiver_views.status_json, RECEIVER),
        name="receiver-status-json",
    ),
    path(
        "admin/archive/instance/<int:pk>/preview.png",
        staff(archive_views.instance_preview, IMAGES),
        name="archive-instance-preview",
    ),
    path(
        "admin/archive/instance/<int:pk>/file.dcm",
        staff(archive_views.instance_download, IMAGES),
        name="archive-instance-download",
    ),
    path(
        "admin/archive/series/<int:pk>/preview.png",
        staff(archive_views.series_preview, IMAGES),
        name="archive-series-preview",
    ),
    re_path(
        r"^admin/archive/(?P<level>patient|study|series)/(?P<pk>[0-9]+)/download\.zip$",
        staff(zip_download, IMAGES),
        name="archive-zip-download",
    ),
    path(
        "admin/upload/",
        staff(upload_page, "archive.add_instance"),
        name="dicomweb-upload",
    ),
    path("admin/", admin.site.urls),
    # DICOMweb: session (staff) or HTTP Basic, checked in dicomweb.auth.
    path("dicomweb/", include("dicomweb.urls")),
    # The OHIF viewer (`make viewer`): staff with the viewer role, checked in the view.
    path("viewer/", viewer_file, name="viewer"),
    path("viewer/<path:path>", viewer_file),
    # Session (staff) or bearer token (METRICS_TOKEN); checked in the view.
    path("metrics", receiver_views.metrics, name="metrics"),
]
