// The top menu's drop-downs (<details> elements in base.html) work without this file; it
// closes an open one when the user clicks elsewhere, tabs out of it or presses Escape, as
// people expect of a menu.
(function () {
  "use strict";
  const menus = () => document.querySelectorAll(".topbar details[open]");

  document.addEventListener("click", (event) => {
    menus().forEach((menu) => {
      if (!menu.contains(event.target) && !menu.classList.contains("nav-toggle")) {
        menu.open = false;
      }
    });
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") {
      return;
    }
    menus().forEach((menu) => {
      if (menu.contains(document.activeElement) || menu.classList.contains("nav-toggle")) {
        menu.open = false;
        menu.querySelector("summary").focus();
      }
    });
  });
  document.addEventListener("focusin", (event) => {
    document.querySelectorAll(".nav-group details[open]").forEach((menu) => {
      if (!menu.contains(event.target)) {
        menu.open = false;
      }
    });
  });
})();
