// The microphone's audio as frames of PCM s16le mono, the websocket mode's format, at the AudioContext's rate.
// Frames of `frameSamples` samples (0.1 s) rather than the render quantum (128 samples): fewer messages.
class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = options.processorOptions.frameSamples;
    this.newFrame();
  }

  newFrame() {
    this.buffer = new ArrayBuffer(this.frameSamples * 2);
    this.view = new DataView(this.buffer);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const length = channels[0].length;
    for (let i = 0; i < length; i++) {
      let sample = 0;
      for (const channel of channels) sample += channel[i];
      sample = Math.max(-1, Math.min(1, sample / channels.length));
      this.view.setInt16(this.filled * 2, sample < 0 ? sample * 0x8000 : sample * 0x7fff, true);
      if (++this.filled === this.frameSamples) {
        this.port.postMessage(this.buffer, [this.buffer]);
        this.newFrame();
      }
    }
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
