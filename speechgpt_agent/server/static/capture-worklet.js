// AudioWorklet processor of the voice page: the microphone's samples, mono float32 at the
// AudioContext's rate, posted to the page in blocks of 2048 frames (the last block shorter).
// The page sends "stop"; the processor posts what it still holds, then {done: true}.

class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(2048);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") {
        this.flush();
        this.port.postMessage({ done: true });
        this.running = false;
      }
    };
  }

  flush() {
    if (this.filled === 0) return;
    const out = this.block.slice(0, this.filled);
    this.port.postMessage({ samples: out }, [out.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      this.block[this.filled++] = sum / channels.length;
      if (this.filled === this.block.length) this.flush();
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
