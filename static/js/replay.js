// Replay page: each terminal recording in asciinema-player, read as a segmented recording
// (an index, then ~512 KiB segments fetched as playback reaches them), so a 100 MB recording
// starts as fast as a small one. Speed changes recreate the player where it was; the
// markers listed beside it (one per command typed, rendered by the server) seek it.
(function () {
  "use strict";

  function setUp(el) {
    const card = el.closest(".player-card");
    const speedSelect = card.querySelector(".player-speed");
    let player = null;
    let playing = false;
    let speed = Number(el.dataset.speed) || 1;

    function create(startAt, autoPlay) {
      const source = { url: el.dataset.indexUrl, format: "segmented", fetchOpts: { credentials: "same-origin" } };
      player = AsciinemaPlayer.create(source, el, {
        preload: true,
        autoPlay: autoPlay,
        startAt: startAt,
        speed: speed,
        fit: "width",
        terminalFontSize: "small",
        controls: true,
      });
      player.addEventListener("play", () => { playing = true; });
      player.addEventListener("playing", () => { playing = true; });
      player.addEventListener("pause", () => { playing = false; });
      player.addEventListener("ended", () => { playing = false; });
    }

    for (const option of speedSelect.options) {
      option.selected = Number(option.value) === speed;
    }
    speedSelect.addEventListener("change", () => {
      const at = player.getCurrentTime() || 0;
      const wasPlaying = playing;
      speed = Number(speedSelect.value) || 1;
      player.dispose();
      el.replaceChildren();
      create(at, wasPlaying);
    });
    card.querySelectorAll("button.marker").forEach((button) => {
      button.addEventListener("click", () => {
        card.querySelectorAll("button.marker.current").forEach((b) => b.classList.remove("current"));
        button.classList.add("current");
        player.seek(Number(button.dataset.time));
      });
    });
    create(Number(el.dataset.startAt) || 0, el.dataset.autoplay === "1");
  }

  document.querySelectorAll('[data-player="replay"]').forEach(setUp);
})();
