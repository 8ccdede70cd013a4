"""DICOMweb under /dicomweb/ (PS3.18 resource paths). UIDs are matched loosely here
(anything without a slash) and looked up exactly in the index: an unknown one is a 404."""

from django.urls import path
from django.views.generic import RedirectView

from dicomweb import views

S, SE, IN = "<str:study>", "<str:series>", "<str:instance>"

urlpatterns = [
    path("", RedirectView.as_view(url="studies"), name="dicomweb-root"),
    path("studies", views.studies, name="dicomweb-studies"),
    path(f"studies/{S}", views.study_resource),
    path(f"studies/{S}/metadata", views.metadata),
    path(f"studies/{S}/series", views.series_search),
    path(f"studies/{S}/instances", views.instances_search),
    path(f"studies/{S}/series/{SE}", views.retrieve),
    path(f"studies/{S}/series/{SE}/metadata", views.metadata),
    path(f"studies/{S}/series/{SE}/instances", views.instances_search),
    path(f"studies/{S}/series/{SE}/instances/{IN}", views.retrieve),
    path(f"studies/{S}/series/{SE}/instances/{IN}/metadata", views.metadata),
    path(f"studies/{S}/series/{SE}/instances/{IN}/frames/<str:numbers>", views.frames),
    path(
        f"studies/{S}/series/{SE}/instances/{IN}/frames/<str:numbers>/rendered",
        views.frame_rendered,
    ),
    path(f"studies/{S}/series/{SE}/instances/{IN}/bulkdata/<path:tag>", views.bulkdata),
    path(f"studies/{S}/rendered", views.rendered),
    path(f"studies/{S}/thumbnail", views.thumbnail),
    path(f"studies/{S}/series/{SE}/rendered", views.rendered),
    path(f"studies/{S}/series/{SE}/thumbnail", views.thumbnail),
    path(f"studies/{S}/series/{SE}/instances/{IN}/rendered", views.rendered),
    path(f"studies/{S}/series/{SE}/instances/{IN}/thumbnail", views.thumbnail),
    path("series", views.series_search),
    path("instances", views.instances_search),
]
