from django.urls import path

from . import views

app_name = "reviews"

# under /runs/ (mergehub/urls.py): the review of run <pk>
urlpatterns = [
    path("<int:pk>/review/", views.review, name="review"),
    path("<int:pk>/comments/<int:entry_pk>/delete/", views.delete_comment, name="delete_comment"),
]
