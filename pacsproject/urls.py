"""The admin, with the staff pages beside it. Every page goes through the admin site's login
(`admin.site.admin_view`): staff only, nothing with patient data visible without it."""

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from archive import views as archive_views
from receiver import views as receiver_views


def staff(view):
    return admin.site.admin_view(view)


urlpatterns = [
    # No public site: the root leads to the dashboard (through the admin's login).
    path("", RedirectView.as_view(pattern_name="archive-dashboard"), name="home"),
    path("admin/dashboard/", staff(archive_views.dashboard), name="archive-dashboard"),
    path("admin/status/", staff(receiver_views.status_page), name="receiver-status"),
    path("admin/status.json", staff(receiver_views.status_json), name="receiver-status-json"),
    path(
        "admin/archive/instance/<int:pk>/preview.png",
        staff(archive_views.instance_preview),
        name="archive-instance-preview",
    ),
    path(
        "admin/archive/instance/<int:pk>/file.dcm",
        staff(archive_views.instance_download),
        name="archive-instance-download",
    ),
    path(
        "admin/archive/series/<int:pk>/preview.png",
        staff(archive_views.series_preview),
        name="archive-series-preview",
    ),
    path("admin/", admin.site.urls),
    # Session (staff) or bearer token (METRICS_TOKEN); checked in the view.
    path("metrics", receiver_views.metrics, name="metrics"),
]
