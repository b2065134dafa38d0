// Confirmation dialogs: a button with data-confirm="ID" opens the <dialog id="ID">.
document.addEventListener("click", (event) => {
  const opener = event.target.closest("[data-confirm]");
  if (opener) {
    document.getElementById(opener.dataset.confirm).showModal();
  }
  const closer = event.target.closest("[data-close]");
  if (closer) {
    closer.closest("dialog").close();
  }
});
