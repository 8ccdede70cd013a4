// Files dropped on the zone go into the form's file input, then the form is sent.
document.addEventListener("DOMContentLoaded", () => {
  const zone = document.getElementById("drop-zone");
  const input = document.getElementById("upload-files");
  const form = document.getElementById("upload-form");
  if (!zone || !input || !form) return;
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.style.background = "#eef";
  });
  zone.addEventListener("dragleave", () => {
    zone.style.background = "";
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.style.background = "";
    input.files = event.dataTransfer.files;
    form.submit();
  });
});
