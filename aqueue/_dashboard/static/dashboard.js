// Live screens: every element with data-live is refreshed from that URL (an HTML fragment
// the server renders and escapes) every data-refresh milliseconds. No build step.
"use strict";
document.querySelectorAll("[data-live]").forEach((element) => {
  const every = Number(element.dataset.refresh) || 2000;
  const refresh = async () => {
    try {
      const answer = await fetch(element.dataset.live, { headers: { Accept: "text/html" } });
      if (answer.ok) element.innerHTML = await answer.text();
    } catch (error) {
      // the dashboard is restarting, or the network is down: try again next time
    }
    setTimeout(refresh, every);
  };
  setTimeout(refresh, every);
});
// A form that needs a choice says so instead of posting nothing.
const replay = document.getElementById("replay-form");
if (replay) {
  replay.addEventListener("submit", (event) => {
    const all = event.submitter && event.submitter.name === "all";
    if (!all && !replay.querySelector("input[name=job_id]:checked")) {
      event.preventDefault();
      alert("Select the dead letters to replay first.");
    }
  });
}
