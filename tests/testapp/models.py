from .devices import Hygrometer, Thermometer

ThermometerDevice, ThermometerReading, ThermometerMessage = Thermometer.create_models()
HygrometerDevice, HygrometerReading, HygrometerMessage = Hygrometer.create_models()
